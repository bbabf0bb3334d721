"""URLs of the example shop: the admin shows runs and their step timelines."""

from django.contrib import admin
from django.urls import path

urlpatterns = [
    path("admin/", admin.site.urls),
]
