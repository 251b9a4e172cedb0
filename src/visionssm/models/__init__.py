"""Model families; importing this package registers them with timm."""
from visionssm.models import vim  # noqa: F401
from visionssm.models.vmamba import VMamba  # noqa: F401  (registers the vmamba_* models)
