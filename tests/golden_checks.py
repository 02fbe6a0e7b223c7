"""One assertion for golden-case rows, shared by every parity test (imported by module name, like audio_fixtures)."""

from acetune.parity.registry import Row


def assert_rows_pass(rows: list[Row]) -> list[Row]:
    """Fail listing every row over its tolerance; returns the rows for further checks."""
    failed = [r for r in rows if not r.passed]
    assert not failed, "\n".join(f"{r.case} {r.tensor}: {r.metric} {r.value:.3e} > {r.tolerance:.1e}" for r in failed)
    return rows
