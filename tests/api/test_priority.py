"""`priority`: single audits default to interactive, a batch's to bulk; stored, shown, listed."""

from httpx import AsyncClient

from tests.factories import audit_request, batch_request


async def test_a_single_audit_is_interactive_unless_it_asks_for_bulk(client: AsyncClient) -> None:
    default = await client.post("/audits", json=audit_request())
    bulk = await client.post("/audits", json=audit_request(priority="bulk"))

    assert default.json()["priority"] == "interactive"
    assert bulk.json()["priority"] == "bulk"
    shown = await client.get(f"/audits/{bulk.json()['id']}")
    assert shown.json()["priority"] == "bulk"


async def test_a_batch_is_bulk_unless_it_or_an_item_asks_otherwise(client: AsyncClient) -> None:
    request = batch_request(2)
    request["audits"][1]["priority"] = "interactive"
    mixed = (await client.post("/batches", json=request)).json()
    urgent = (await client.post("/batches", json=batch_request(1, priority="interactive"))).json()

    def priorities(batch_id: str) -> dict[str, str]:
        return {item["subject"]: item["priority"] for item in listed[batch_id]}

    listed = {
        batch["id"]: (await client.get("/audits", params={"batch_id": batch["id"]})).json()["items"]
        for batch in (mixed, urgent)
    }
    assert priorities(mixed["id"]) == {"Page 0": "bulk", "Page 1": "interactive"}
    assert priorities(urgent["id"]) == {"Page 0": "interactive"}


async def test_an_unknown_priority_is_a_422(client: AsyncClient) -> None:
    response = await client.post("/audits", json=audit_request(priority="urgent"))

    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "priority"]


async def test_the_list_filters_by_priority(client: AsyncClient) -> None:
    bulk = (await client.post("/audits", json=audit_request(priority="bulk"))).json()
    await client.post("/audits", json=audit_request())

    listed = await client.get("/audits", params={"priority": "bulk"})

    assert [item["id"] for item in listed.json()["items"]] == [bulk["id"]]
