"""claude-net's benchmark suite: ``python -m bench`` runs every benchmark and prints one table.

Each ``bench_*.py`` also runs on its own (``python bench/bench_messaging.py --help``). See
``bench/README.md`` for what each one measures, its baseline and the figures last measured.
"""
