from tests.factories import audit_request

async def test_rubric(client):
    r = await client.post("/audits", json=audit_request(criteria=None, rubric="x"))
    print("##", r.status_code, r.text)

async def test_rubric_big(client):
    r = await client.post("/audits", json=audit_request(criteria=None, rubric="x", rubric_version=2**40))
    print("##", r.status_code, r.text)

async def test_deep(client):
    for n in (300, 500, 900):
        deep = {"a": 1}
        for _ in range(n):
            deep = {"a": deep}
        try:
            r = await client.post("/audits", json=audit_request(metadata=deep))
            print("##", n, r.status_code)
        except BaseException as e:
            import traceback; traceback.print_exc(limit=-8)
