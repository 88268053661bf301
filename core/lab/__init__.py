"""The lab: ablation files, grids of runs, run analysis, statistics and reports. Built on the
runtime (``ponderkit.engine``) and the contract."""
