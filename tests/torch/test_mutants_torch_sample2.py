"""Kill-tests for vera_torch mutants of the second sampled campaign (tools/mutate.py --package vera_torch
--sample 200 --seed 2, issue 15). Expected values come from the float64 NumPy reference ``vera_ref``
(or from the spec's rules), never from vera_torch itself."""
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import vera_ref  # noqa: E402
from vera_ref.errors import ProjectionError  # noqa: E402
from vera_torch.philox import projection  # noqa: E402


@pytest.mark.parametrize("group, shown", [(-1, "-1"), (True, "True"), (False, "False"), (1.5, "1.5"),
                                          (2**32, "4294967296"), (np.int64(-1), "np.int64(-1)"), ("1", "'1'"),
                                          (None, "None")])
def test_projection_refuses_the_groups_the_reference_refuses(group, shown):
    # spec 1.4 / 2.4: the group is a counter word, an integer in [0, 2^32)
    with pytest.raises(ProjectionError):
        vera_ref.projection(3, 2, 4, 4, group)
    msg = f"group must be an integer in [0, 4294967296), got {shown}"
    with pytest.raises(ProjectionError, match=r"^" + re.escape(msg) + r"$"):
        projection(3, 2, 4, 4, group)


@pytest.mark.parametrize("group", [0, 1, 2**32 - 1, np.uint32(7)])
def test_projection_accepts_every_group_word(group):
    A, B = projection(3, 2, 4, 5, group)
    a, b = vera_ref.projection(3, 2, 4, 5, int(group))
    assert np.array_equal(A.numpy(), a) and np.array_equal(B.numpy(), b)
