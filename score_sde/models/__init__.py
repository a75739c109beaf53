"""Score networks. Importing this package registers every model by name."""
from score_sde.models import utils  # noqa: F401  (models.utils.get_score_fn is public)
from score_sde.models import mlp  # noqa: F401  (registers 'mlp')
from score_sde.models import ddpm, ncsnpp, ncsnv2  # noqa: F401  (register ddpm, ncsnpp, ncsn, ncsnv2_*)
from score_sde.models import wideresnet_noise_conditional  # noqa: F401  (the noise-conditional classifier)
from score_sde.models.utils import get_model, get_score_fn, register_model  # noqa: F401
