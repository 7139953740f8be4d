"""The region engine: pure functions of a network and its inputs (no files, no configs).

Imports nothing from ``pipeline.inputs``, ``pipeline.store`` or ``pipeline.stages``
(``tests/test_layout.py`` checks it); see ``docs/design.md``.
"""
