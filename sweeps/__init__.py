"""The sweep runner behind sweep.py (docs/sweeps.md): reading a sweep file (`discover`, `record_call`), its jobs
and what each needs (`jobs`), running them in local slots (`local`) or through submitit (`cluster`), the status
table (`status`), the command (`run`). Torch-free: it starts train.py / val.py, it never imports them."""
