"""Structures for moire-al: honeycomb multilayers, commensurate twisted cells,
locally twisted cells, disregistry coverings, defects and candidate pools.

Every generator returns an ``ase.Atoms`` with ``arrays['layer']`` (0 = bottom) and
the provenance keys of docs/interfaces.md in ``info``. Lengths in Å, angles in
degrees. See docs/structures.md.
"""

from moire_al.structures.lattice import (  # noqa: F401
    MATERIALS, VACUUM, bond_length, material_info, monolayer, multilayer, primitive_vectors,
)
from moire_al.structures.twisted import (  # noqa: F401
    commensurate_angle, commensurate_cell, list_commensurate, moire_period,
    nearest_commensurate, twisted_bilayer, twisted_multilayer,
)
from moire_al.structures.local import (  # noqa: F401
    blend, default_radii, disregistry_covering, locally_twisted, min_intralayer_distance,
    moire_vectors, shift_grid,
)
from moire_al.structures.defects import (  # noqa: F401
    interstitial_interlayer, interstitial_intralayer, stone_wales, vacancy,
)
from moire_al.structures.io import read_structures, validate_structure, write_structures  # noqa: F401
from moire_al.structures.pool import PoolRecipe, make_pool  # noqa: F401
