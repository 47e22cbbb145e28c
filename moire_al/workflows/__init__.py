"""moire_al.workflows: the hyperactive loop as FireWorks workflows.

Importing the package makes FireWorks take its ids from the post-image of the counter's
increment (:mod:`moire_al.workflows.ids`): exact on the local job database under
concurrent workers, where the pre-image FireWorks reads can be stale.
"""

from moire_al.workflows.ids import install as _install_ids

_install_ids()
