"""The admin API (`/admin/v1/…`): the `domicile` command's operations over HTTP, for
automation, authenticated with admin keys (`da-…`) and audited. See docs/ADMIN-API.md."""

from .app import AdminApi, AdminMount, create_admin_app, mount_admin
from .routes import ADMIN_PREFIX, ROUTES, AdminRoute

__all__ = ["ADMIN_PREFIX", "ROUTES", "AdminApi", "AdminMount", "AdminRoute", "create_admin_app",
           "mount_admin"]
