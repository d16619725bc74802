import pandas as pd

from featureflow_dagster.plots import markdown_table


def test_markdown_tables_escape_what_markdown_would_eat():
    """Token strings in metadata tables: `__(` is not emphasis, `a|b` is one cell, floats are formatted."""
    table = pd.DataFrame({"token": ["__(", "a|b", "*x*"], "llr": [5.4, -1.0, 0.25]}, index=pd.Index([1, 2, 3], name="feature"))
    lines = markdown_table(table).splitlines()
    assert lines[0] == "| feature | token | llr |"
    assert lines[2] == "| 1 | \\_\\_( | 5.4000 |"
    assert lines[3] == "| 2 | a\\|b | -1.0000 |"
    assert lines[4] == "| 3 | \\*x\\* | 0.2500 |"
    assert all(line.count(" | ") == 2 for line in lines[2:])  # three cells each: no '|' left unescaped
