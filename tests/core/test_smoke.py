async def test_send_and_inbox(hub_harness):
    async with hub_harness() as h:
        a = await h.token("alpha")
        b = await h.token("beta")
        status, body = await h.call("POST", "/api/send", a, {"to": "beta", "message": "hello"})
        assert status == 200 and body["ok"] is True
        status, body = await h.call("GET", "/api/inbox?ack=true", b)
        assert status == 200
        assert [m["message"] for m in body["messages"]] == ["hello"]
        assert body["messages"][0]["from"] == "alpha"
        status, body = await h.call("GET", "/api/inbox", b)
        assert body["messages"] == []
