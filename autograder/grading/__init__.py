"""Grading one submission: read the notebook, run it in a worker, run every check, write its report.

``notebook`` reads a notebook without running it; ``runner`` runs its cells in a
sandboxed worker and then every check ``registry`` found; ``api`` is the ``sub``
a check sees, ``expect`` the comparisons that write the teaching message;
``timelimit`` stops a check that runs too long in the student's own kernel;
``report`` writes and reads one submission's JSON report.

May import: :mod:`autograder.sandbox`. Never the class run or the outputs.
The checks (``autograder/checks``, ``autograder/hidden``) import ``api``,
``expect`` and ``registry`` from here and ``GROUPS`` from
``autograder.sandbox.forbidden``: that is their whole API.
"""
