"""Plain-text tables for reports (private)."""


def format_table(headers, rows, align=None) -> str:
    """Rows of strings as an aligned plain-text table with a rule under the header.

    ``align`` is a string with one character per column, ``"l"`` or ``"r"`` (default:
    first column left, the others right).
    """
    ncol = len(headers)
    if align is None:
        align = "l" + "r" * (ncol - 1)
    widths = [max(len(str(r[j])) for r in [headers, *rows]) for j in range(ncol)]

    def line(cells):
        parts = [str(c).ljust(w) if a == "l" else str(c).rjust(w) for c, w, a in zip(cells, widths, align)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])
