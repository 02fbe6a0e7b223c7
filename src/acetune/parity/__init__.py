"""Golden-vector parity: metrics, the case registry, and the modules that register cases.

A case is a function `(golden_dir: Path) -> list[Row]` registered with `@golden_case`. It runs
when the folder it needs exists under the golden dir (laid out like ../shared/golden).
`acetune selftest` and the test suite both run cases through `run_case`.
"""

from acetune.parity.registry import CASES, Row, golden_case, load_case_modules, run_case  # noqa: F401
