async def test_submit_then_get(client):
    r = await client.post("/audits", json={"subject": "s", "content": "c", "criteria": [{"id": "a", "description": "d"}]})
    assert r.status_code == 202, r.text
    r2 = await client.get(r.headers["location"].removeprefix("/api/v1"))
    assert r2.json()["status"] == "queued"
