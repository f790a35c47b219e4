"""The divergences by name, for the chunked driver and the package face."""

from __future__ import annotations

from cotdistill.losses.forward_kl import forward_kl
from cotdistill.losses.jsd import generalized_jsd
from cotdistill.losses.reverse_kl import reverse_kl

DIVERGENCES = {"forward": forward_kl, "reverse": reverse_kl, "jsd": generalized_jsd}
