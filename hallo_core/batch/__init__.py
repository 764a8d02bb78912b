"""`python -m hallo_core batch jobs.jsonl --out DIR`: many videos on a Ray cluster, one job per GPU.

manifest.py reads and checks the job lines (every line before anything starts); worker.py is one job on a worker
(`generate` into a render directory under DIR, so a retried job resumes from its last finished clip); progress.py is
the batch's progress state (kept in a Ray actor) and its view; ray_runner.py submits the jobs to Ray and writes the
results file; command.py adds the subcommand. Ray is an optional extra: only ray_runner.py imports it, and only when
the command runs. Nothing else in hallo_core imports this package (cli.py adds the command lazily).
"""
