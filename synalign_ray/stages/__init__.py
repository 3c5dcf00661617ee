"""One module per command (embed, select, generate, align, run, score); each validates its inputs before any
model loads, then writes one output folder through `run_folder.RunFolder` under Ray started by `runtime`."""
