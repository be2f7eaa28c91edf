"""The two kinds of failure the CLI distinguishes: bad input (exit 2) and failed work (exit 1)."""


class FvdsError(Exception):
    """The work failed (exit code 1)."""

    exit_code = 1


class BadInput(FvdsError):
    """The user's input is wrong (exit code 2): the message names the value and what is accepted."""

    exit_code = 2


def close_matches(word: str, candidates: list[str], n: int = 5) -> str:
    """A short 'did you mean' fragment for error messages, or an empty string."""
    import difflib

    found = difflib.get_close_matches(word, candidates, n=n, cutoff=0.5)
    return f" Close matches: {', '.join(found)}." if found else ""
