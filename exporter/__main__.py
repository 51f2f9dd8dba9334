import sys

from passthrough_exporter.cli import main

sys.exit(main())
