"""Seeds derived from an experiment's seed for each use of random numbers after training.

Training seeds torch's generators with the experiment's seed itself. Certification and analysis draw from seeds
hashed from it with a name for their use, so that none of their noise is noise the model was trained on (a
certificate assumes noise independent of the classifier), and no two uses share a stream.
"""

from __future__ import annotations

import hashlib


def derived_seed(seed: int, use: str, *parts: int | str) -> int:
    """A 63-bit seed for `use` ("certify", "analyze/confidence", ...) of an experiment's `seed`, and `parts` (an
    image's index). Any two distinct arguments give, in effect, unrelated seeds, and none of them is a small
    number such as a seed a spec sets."""
    text = "/".join(str(part) for part in (seed, use, *parts))
    digest = hashlib.blake2b(text.encode(), digest_size=8, person=b"smx-seeds").digest()
    return int.from_bytes(digest, "little") >> 1
