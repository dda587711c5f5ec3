"""
Access tokens in the admin: issue one (its secret is shown once, on the page
that follows, and kept nowhere), see when each was last used, revoke.
"""
from django.contrib import admin
from django.template.response import TemplateResponse
from django.utils.translation import ngettext

from .auth import TOKEN_SUBPROTOCOL
from .models import AccessToken


@admin.register(AccessToken)
class AccessTokenAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "user",
        "prefix",
        "created",
        "expires",
        "last_used",
        "state",
    )
    list_filter = ("revoked", "expires")
    search_fields = ("name", "prefix", "user__username")
    list_select_related = ("user",)
    readonly_fields = ("prefix", "created", "last_used", "revoked")
    fieldsets = (
        (None, {"fields": ("user", "name", "expires")}),
        ("Use", {"fields": ("prefix", "created", "last_used", "revoked")}),
    )
    actions = ["revoke_tokens"]

    @admin.display(description="state")
    def state(self, token):
        return token.refusal() or "valid"

    def get_readonly_fields(self, request, token=None):
        # A token's owner is fixed once issued: issue a new one instead.
        if token is not None:
            return ("user",) + self.readonly_fields
        return self.readonly_fields

    def save_model(self, request, token, form, change):
        if not change:
            token._secret = token.new_secret()
        super().save_model(request, token, form, change)

    def response_add(self, request, token, post_url_continue=None):
        """Show the new secret once, on this response only, never cached."""
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "token": token,
            "secret": token._secret,
            "subprotocol": TOKEN_SUBPROTOCOL + token._secret,
            "title": "Access token issued",
        }
        response = TemplateResponse(
            request, "admin/pubsub/accesstoken/issued.html", context
        )
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke the selected tokens")
    def revoke_tokens(self, request, queryset):
        count = queryset.revoke()
        self.message_user(
            request,
            ngettext("Revoked %d token.", "Revoked %d tokens.", count) % count,
        )
