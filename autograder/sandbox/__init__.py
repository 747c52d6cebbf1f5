"""The sandbox: where a submission's code runs, and the grader's side of it.

``host`` starts the fork server under bubblewrap (or as the unprivileged user)
and talks to its workers; ``zygote`` is that fork server, ``worker`` the child it
forks for one submission (the two are one unit: they run inside the sandbox);
``wire`` is the data-only format values cross in; ``forbidden`` and ``inputs``
are the rules a worker's calls run under (forbidden built-ins, inputs that must
not change).

May import: nothing else of ``autograder`` (the package itself only for its
``in_grader`` flag). Everything above imports this, never the other way.
"""
