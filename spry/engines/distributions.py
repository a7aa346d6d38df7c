"""How random directions are distributed: plain data, importing nothing.

The engine registry (`spry.engines`), the resolving step and the engines that draw
directions read this one tuple; it imports nothing, so checking a configured
`tangent-distribution` costs no torch import.

Each has E[v v^T] = I, so every estimate that averages s_k v_k with
s_k = <grad, v_k> stays unbiased:

- gaussian: v ~ N(0, I) (the paper's);
- rademacher: v with independent +-1 entries (the sign of the Gaussian draw);
- orthogonal: the K Gaussian draws orthonormalised jointly over the slice, in
  blocks of at most d, and scaled to norm sqrt(d): K = d gives the exact gradient,
  and no two directions of a block repeat work.
"""

DISTRIBUTIONS = ("gaussian", "rademacher", "orthogonal")
