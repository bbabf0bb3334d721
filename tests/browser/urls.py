"""URLs of the browser tests: the admin, its static files, and two test-only helpers.

Headless Chromium cannot be handed a session cookie, so ``test-login/`` logs
the test's superuser in and redirects to ``next``; ``layout-probe/`` loads a
page in a 1,400 px frame and writes what scrolls sideways into its own DOM,
where ``--dump-dom`` reads it. The browser tests set ``STATIC_URL`` to
``/assets/``, served from the apps' static folders.
"""

from __future__ import annotations

from urllib.parse import quote

from django.contrib import admin
from django.contrib.auth import get_user_model, login
from django.contrib.staticfiles.views import serve
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, re_path
from django.utils.html import escape

USERNAME = "browser-admin"


def test_login(request: HttpRequest) -> HttpResponse:
    """Log the browser tests' superuser in, then go to ``next``."""
    user = get_user_model().objects.get(username=USERNAME)
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    return HttpResponseRedirect(request.GET.get("next", "/admin/"))


PROBE = """<!doctype html><html><head><style>body{margin:0}</style></head><body>
<iframe id="page" src="%s" style="width:%dpx;height:900px;border:0"></iframe>
<script>
document.getElementById("page").addEventListener("load", function () {
  var doc = this.contentDocument, out = {
    page: [doc.documentElement.scrollWidth, doc.documentElement.clientWidth],
    scrollers: []
  };
  doc.querySelectorAll(".results, #changelist, #content-main, .hf-timeline").forEach(function (el) {
    out.scrollers.push([el.id || el.className, el.scrollWidth, el.clientWidth]);
  });
  var pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script></body></html>"""


def layout_probe(request: HttpRequest) -> HttpResponse:
    """Load ``?url=`` in a frame ``?width=`` px wide and report what overflows sideways."""
    width = int(request.GET.get("width", "1400"))
    target = "/test-login/?next=" + quote(request.GET.get("url", "/admin/"), safe="/")
    return HttpResponse(PROBE % (escape(target), width))


urlpatterns = [
    path("admin/", admin.site.urls),
    path("test-login/", test_login),
    path("layout-probe/", layout_probe),
    # Not under STATIC_URL: the live server answers that prefix from STATIC_ROOT itself.
    re_path(r"^assets/(?P<path>.*)$", serve, {"insecure": True}),
]
