"""The commands: the program's processes, from the command line in to the exit code out.

- `main`: the entry point; `serve` starts lean through `serve`, every other command through `cli`;
- `cli`: the one-shot commands (`devices`, `check`, `textfile`, `capture`, `plugins`) and the
  command line every judging process parses; `cmdline`: the parser class, durations, early logging;
- `serve`: the `serve` command (its own options, start, signals, reload);
- `refresh_worker`: the process `serve` starts to read, judge and render each refresh;
- `capture`: the `capture` archive; `unpack`: one unpacked safely (`diff`); `diff`: two hosts compared;
  `deadline`: `--timeout`; `gcpause`; `fileutil`: files the
  commands write, never over what is not a regular file.

May import every layer below: the root modules, `reading`, `judging`, `rendering`, `serving`.
Nothing imports it but the package's `__main__`.
"""
