"""backend.job_settings: the one params -> settings parser every job kind uses."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from backend.job_api import JobError
from backend.job_settings import JobSettings, check_non_negative, check_ranges


@dataclass
class Demo(JobSettings):
    JOB_KIND = "demo"

    flag: bool = False
    count: int = 3
    scale: float = 1.5
    name: str = "x"
    span: tuple[float, float] = (0.0, 1.0)

    def validate(self) -> None:
        check_ranges(self, (("count", 1, 10),))
        check_non_negative(self, ("scale",))


def test_values_are_coerced_by_the_defaults_type():
    s = Demo.from_params({"flag": True, "count": 4.0, "scale": 2, "name": None, "span": [-1, 2]})
    assert (s.flag, s.count, s.scale, s.name, s.span) == (True, 4, 2.0, "x", (-1.0, 2.0))
    assert isinstance(s.count, int) and isinstance(s.scale, float)
    assert s.to_meta() == {"flag": True, "count": 4, "scale": 2.0, "name": "x", "span": [-1.0, 2.0]}


@pytest.mark.parametrize("params, message", [
    ([1, 2], "params must be a map"),
    ({"colour": 1}, "unknown demo parameter 'colour'; known: ['count', 'flag', 'name', 'scale', 'span']"),
    ({"flag": 1}, "demo parameter flag=1: expected true or false"),
    ({"count": 2.5}, "demo parameter count=2.5: expected a whole number"),
    ({"count": True}, "demo parameter count=True: expected a whole number"),
    ({"count": float("inf")}, "demo parameter count=inf: cannot convert float infinity to integer"),
    ({"scale": float("nan")}, "demo parameter scale=nan: not finite"),
    ({"name": 5}, "demo parameter name=5: expected a string"),
    ({"span": [0.0]}, "demo parameter span=[0.0]: expected 2 finite numbers"),
    ({"span": [0.0, float("inf")]}, "expected 2 finite numbers"),
    ({"count": 11}, "count=11 is out of range [1, 10]"),
    ({"scale": -0.5}, "scale=-0.5 must be >= 0"),
])
def test_bad_params_name_the_field(params, message):
    with pytest.raises(JobError) as e:
        Demo.from_params(params)
    assert e.value.code == "bad_params" and message in e.value.message, e.value.message
