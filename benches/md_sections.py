"""The sections of benches/BENCHMARKS.md that each benchmark script owns.

A script writes its text between its own markers and leaves the rest of the file (the other scripts'
sections, hand-written ones) as it was; a section that is not there yet goes at the end, or at the
start with `first=True`.
"""


def markers(owner):
    """The begin and end markers of `owner`'s section (`owner`: the script's file name)."""
    return (f"<!-- {owner}: begin (written by benches/{owner}; re-run it rather than editing) -->",
            f"<!-- {owner}: end -->")


def write_section(md_path, owner, text, first=False):
    """Replaces `owner`'s section of the file at `md_path` with `text` (or adds it)."""
    begin, end = markers(owner)
    try:
        with open(md_path) as f:
            old = f.read()
    except OSError:
        old = ""
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    if begin in old and end in old:
        rest = old[old.index(end) + len(end):].lstrip("\n")
        new = old[: old.index(begin)] + block + ("\n" + rest if rest else "")
    elif first:
        new = block + ("\n" + old.lstrip("\n") if old else "")
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + block
    with open(md_path, "w") as f:
        f.write(new)
