"""The parts of the `kubernetes` client kdns uses, imported without its generated API classes and models.

`import kubernetes` and the generated CoreV1Api/DiscoveryV1Api import pydantic and hundreds of models:
~40 MiB and most of a second, for four GET requests. kdns needs the client's configuration (kubeconfig,
in-cluster, tokens, TLS), its REST client (urllib3 pool, retries) and ApiException. So the packages
whose __init__ imports everything are registered as deferred modules: their submodules import as
usual, and the package's own __init__ runs only when something asks it for a name it does not have
yet (other code in the process that uses the full client still gets it, on first use).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from typing import Any, Callable
from urllib.parse import quote


class _Deferred(types.ModuleType):
    """A package whose __init__ has not run: it runs on the first look-up of a missing name."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # probes (__all__, __wrapped__, ...) must not load everything
            raise AttributeError(name)
        if importlib.machinery.PathFinder.find_spec(f"{self.__name__}.{name}", self.__path__) is not None:
            return importlib.import_module(f"{self.__name__}.{name}")  # `from package import submodule`
        self.__class__ = types.ModuleType
        self.__spec__.loader.exec_module(self)
        return getattr(self, name)


def _defer(name: str) -> None:
    if name in sys.modules:  # already imported in full: nothing to save
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not a package")
    module = importlib.util.module_from_spec(spec)
    module.__class__ = _Deferred
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


for _package in ("kubernetes", "kubernetes.client", "kubernetes.client.api", "kubernetes.client.models",
                 "kubernetes.config", "kubernetes.utils", "kubernetes.watch"):
    _defer(_package)

from kubernetes.client.configuration import Configuration  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402
from kubernetes.client.rest import RESTClientObject  # noqa: E402

# incluster_config and kube_config do `from kubernetes.client import Configuration` (kube_config also
# ApiClient: see load_kube_config)
if isinstance(sys.modules["kubernetes.client"], _Deferred):
    sys.modules["kubernetes.client"].Configuration = Configuration

from kubernetes.config.config_exception import ConfigException  # noqa: E402
from kubernetes.config.incluster_config import InClusterConfigLoader  # noqa: E402
from kubernetes.watch.watch import iter_resp_lines  # noqa: E402

__all__ = ["ApiException", "ConfigException", "Configuration", "InClusterConfigLoader", "KubeClient",
           "iter_resp_lines", "list_request", "load_kube_config"]


def load_kube_config(**kwargs: Any) -> None:
    """kubernetes.config.load_kube_config, imported when a kubeconfig is used. Its module imports
    ApiClient (pydantic), oauthlib and requests_oauthlib (requests), ~12 MiB it uses only to refresh
    an OIDC token: those are put off until then."""
    if "kubernetes.config.kube_config" not in sys.modules:
        placeholders = [(module, name, _on_call(module, name)) for module, name in (
            ("kubernetes.client", "ApiClient"), ("requests_oauthlib", "OAuth2Session"))]
        for package in ("oauthlib", "oauthlib.oauth2", "requests_oauthlib"):
            _defer(package)
        placeholders = [(module, name, fn) for module, name, fn in placeholders
                        if isinstance(sys.modules[module], _Deferred)]
        for module, name, fn in placeholders:
            setattr(sys.modules[module], name, fn)
        try:
            import kubernetes.config.kube_config  # noqa: F401
        finally:
            for module, name, _ in placeholders:
                delattr(sys.modules[module], name)
    from kubernetes.config.kube_config import load_kube_config as load

    load(**kwargs)


def _on_call(module: str, name: str) -> Callable[..., Any]:
    """A stand-in for module.name (a class called to build one) that imports it when called."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    return call


class KubeClient:
    """What kdns uses of kubernetes.client.ApiClient for a GET: the configuration (kubeconfig,
    in-cluster, its token refresh hook), the REST client (urllib3 pool with the configuration's TLS,
    proxy, keep-alive and retries) and ApiClient's request assembly for it: default headers, the
    bearer token from configuration.auth_settings(), query encoding. ApiClient itself imports pydantic
    and the model machinery (~8 MiB) that reading raw JSON never uses."""

    user_agent = "OpenAPI-Generator/37.0.2/python"  # ApiClient's default

    def __init__(self, configuration: Configuration):
        self.configuration = configuration
        self.rest_client = RESTClientObject(configuration)

    def get(self, path: str, query: list[tuple[str, Any]], timeout: Any = None) -> Any:
        """GET `path`: the urllib3 response, unread (a watch streams); an error status raises ApiException."""
        headers = {"Accept": "application/json", "User-Agent": self.user_agent}
        auth = self.configuration.auth_settings().get("BearerToken")
        if auth:
            headers[auth["key"]] = auth["value"]
        url = self.configuration.host + path
        if query:
            url += "?" + "&".join(f"{key}={quote(str(value).lower() if isinstance(value, bool) else str(value))}"
                                  for key, value in query)
        response = self.rest_client.request("GET", url, headers=headers, _request_timeout=timeout)
        if not 200 <= response.status <= 299:
            response.read()
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return response.response

    def close(self) -> None:
        self.rest_client.pool_manager.clear()


# query parameters of list and watch, as the generated API classes name them
_QUERY = {"limit": "limit", "_continue": "continue", "watch": "watch", "resource_version": "resourceVersion",
          "allow_watch_bookmarks": "allowWatchBookmarks", "timeout_seconds": "timeoutSeconds"}


def list_request(client: KubeClient, path: str) -> Callable[..., Any]:
    """A list (or watch) of the collection at `path`, with the generated list_*_for_all_namespaces'
    parameter names: returns the urllib3 response unread; an error status raises ApiException."""

    def call(_request_timeout: Any = None, **params: Any) -> Any:
        return client.get(path, [(_QUERY[key], value) for key, value in params.items() if value is not None],
                          _request_timeout)

    return call
