"""tinyllm: the book's library, one reference implementation per component.

Every chapter of the book shows and runs this code; the exercise solutions are
generated from it and the autograder uses it as its oracle.
"""

__version__ = "0.1.0"
