"""bfloat16 is computed in float16 (an fp16-only kernel path given bf16 tensors): more mantissa,
far less range, so large activations overflow to inf where bfloat16 holds them.

Spec 3.8/5.2: a bfloat16 result is computed with bfloat16's range (binary32's exponent); values
near the top of that range are legal inputs.
"""
from _plant import reference_impl

CLAUSE = "5.2"
AREA = "numerics"
EXPECT = "caught"


def make():
    return reference_impl(lib=[("layer.py", "        return round_to(np.asarray(a, dtype=np.float64), self.dtype)\n",
                                "        return round_to(np.asarray(a, dtype=np.float64),\n"
                                "                        'float16' if self.dtype == 'bfloat16' else self.dtype)\n")],
                          name="planted: bfloat16 computed in float16")
