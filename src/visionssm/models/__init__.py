"""Model families; importing this package registers them with timm (vim_*, vmamba_*, videomamba_*)."""
from visionssm.models import videomamba, vim  # noqa: F401
from visionssm.models.vmamba import VMamba  # noqa: F401
