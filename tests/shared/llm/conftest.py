import pytest

SIMULATOR_PLUGIN = "tests.fixtures.simulator"


def pytest_configure(config: pytest.Config) -> None:
    # Until the root conftest lists the plugin in `pytest_plugins`; harmless after.
    if not config.pluginmanager.has_plugin(SIMULATOR_PLUGIN):
        config.pluginmanager.import_plugin(SIMULATOR_PLUGIN)
