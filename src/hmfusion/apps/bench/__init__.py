"""`hmfusion bench`: hmfusion against dense and the code users write, quiet and under load.

- `command`: its arguments and `main`;
- `cases`: the grid of shapes and the methods compared;
- `engine`: timing, the load processes, the targets;
- `report`: tables and figures of a run.
"""
