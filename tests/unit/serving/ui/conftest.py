"""Helpers of the web UI tests: sign in through the real form (CSRF token included), read the CSRF token of
a page, and count audit rows by action. The serving fixtures (app, store, hospital, tokens) come from
tests/unit/serving/conftest.py."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from carecast.store import Store
from tests.unit.serving.conftest import PASSWORD, audit_rows

HTML = {"Accept": "text/html,application/xhtml+xml"}
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "the page has no CSRF field"
    return found.group(1)


def session_csrf(client: FlaskClient) -> str:
    with client.session_transaction() as sess:
        token = sess.get("csrf")
    assert isinstance(token, str)
    return token


def sign_in(client: FlaskClient, username: str, password: str = PASSWORD) -> Any:
    page = client.get("/ui/login", headers=HTML)
    assert page.status_code == 200
    return client.post("/ui/login", data={"username": username, "password": password,
                                          "csrf_token": csrf_of(page.text)}, headers=HTML)


def actions(store: Store) -> list[str]:
    return [r.action for r in audit_rows(store)]


@pytest.fixture
def browser(app: Flask, tokens: dict[str, str]) -> Iterator[Callable[[str], FlaskClient]]:
    """A signed-in test client per role (users test-<role>; clinician and nurse on Ward A)."""
    clients: list[FlaskClient] = []

    def open_as(role: str) -> FlaskClient:
        client = app.test_client()
        clients.append(client)
        answer = sign_in(client, f"test-{role}")
        assert answer.status_code == 302, answer.status_code
        return client

    yield open_as
