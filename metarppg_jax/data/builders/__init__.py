"""The tfds builders, one a dataset; importing this registers them with tfds.

`BUILDERS` maps the dataset names of `--dataset` / `config.data.dataset` to the classes.
"""

from metarppg_jax.data.builders.mahnob_hci import MahnobHci
from metarppg_jax.data.builders.meta_rppg_example import MetaRppgExample
from metarppg_jax.data.builders.pure import Pure
from metarppg_jax.data.builders.synthetic_rppg import SyntheticRppg
from metarppg_jax.data.builders.ubfc_rppg import UbfcRppg

BUILDERS = {
    "synthetic_rppg": SyntheticRppg,
    "ubfc_rppg": UbfcRppg,
    "pure": Pure,
    "mahnob_hci": MahnobHci,
    "meta_rppg_example": MetaRppgExample,
}
