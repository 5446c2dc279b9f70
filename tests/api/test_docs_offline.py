"""`/docs` and `/redoc` load every asset from the API itself: they work offline."""

import re

import pytest
from httpx import AsyncClient

ASSET = re.compile(r"""(?:src|href)=["']([^"']+)["']""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_pages_use_no_outside_host(client: AsyncClient, page: str) -> None:
    response = await client.get(f"http://test{page}")

    assert response.status_code == 200
    assets = ASSET.findall(response.text)
    assert assets, response.text
    assert not [url for url in assets if "//" in url], assets
    for asset in assets:
        served = await client.get(f"http://test{asset}")
        assert served.status_code == 200, asset
        assert len(served.content) > 100, asset
