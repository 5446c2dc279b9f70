import json
from tests.factories import audit_request

async def test_explore(client, client_with):
    from httpx import ASGITransport, AsyncClient
    client = AsyncClient(transport=ASGITransport(app=client._transport.app, raise_app_exceptions=False), base_url="http://test/api/v1")
    def show(label, r):
        print("##", label, r.status_code, r.headers.get("content-type"), r.text[:300])
    b = json.dumps(audit_request())
    for n in (20, 32, 64, 100, 150, 200):
        deep = {"a": 1}
        for _ in range(n):
            deep = {"a": deep}
        show(f"deep{n}", await client.post("/audits", json=audit_request(metadata=deep)))
    deep = [1]
    for _ in range(200):
        deep = [deep]
    show(f"deeplist", await client.post("/audits", json=audit_request(metadata={"a": deep})))
    show("int big", await client.post("/audits", content=b[:-1] + ', "rubric_version": ' + "9"*30 + "}", headers={"content-type": "application/json"}))
    show("rubric ver big", await client.post("/audits", json=audit_request(criteria=None, rubric="x", rubric_version=2**40)))
    show("meta int big", await client.post("/audits", json=audit_request(metadata={"n": 10**30})))
    show("meta str nul key", await client.post("/audits", json=audit_request(metadata={"a\x00": 1})))
    show("lone surrogate", await client.post("/audits", content=b.replace("TB-01", "\\ud800"), headers={"content-type": "application/json"}))
    show("lone surrogate subj", await client.post("/audits", content=b.replace("Product page", "\\ud800"), headers={"content-type": "application/json"}))
