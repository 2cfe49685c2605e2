"""The applications built on the library: the `hmfusion` command line and its commands.

- `cli`: the `hmfusion` entry point (only the command being run is imported);
- `common`: what the commands share (data arguments, devices, the one error path);
- `outputs`: atomic output folders and files; `reporting`: tables and figures;
- `train/`: `hmfusion train` (the main job); `predict`: `hmfusion predict`;
- `bench/`: `hmfusion bench`.

Nothing in the library (`fusion`, `structures`, `ops`, `compat`, `data`) imports from here.
"""
