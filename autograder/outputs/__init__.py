"""What a class run writes from its reports: tables, pages, nbgrader's gradebook and notebooks.

``exports`` (the CSV tables, Canvas), ``feedback`` (a page per submission),
``summary`` (the class's page), ``similarity`` (pairs of notebooks to look at),
``gradebook`` (nbgrader's database) and ``nbgrader_out`` (autograded notebooks).
None of them decides a score: editing one regrades nobody.

May import: :mod:`autograder.grading` (the reports, the notebook reader, the
registry). Never the sandbox nor the class run.
"""
