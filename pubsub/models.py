"""
Access tokens: how programmatic clients sign in to the websocket.

A token is a random secret shown once, when it is issued (admin or
``manage.py issue_token``). The database keeps only its SHA-256 digest and
its first characters, by which people recognise it; a leaked table gives no
usable secret. A token can expire and can be revoked; live connections that
use a revoked or expired token are closed (see ``pubsub.auth.TokenWatch``).
"""
import datetime
import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

#: Every secret starts with this, so that scanners and people can tell one.
SECRET_PREFIX = "vt_"
#: Characters of the secret kept in clear to recognise a token.
SHOWN_LENGTH = 10
#: ``last_used`` is written at most this often per token.
TOUCH_EVERY = datetime.timedelta(minutes=1)


def digest_of(secret):
    return hashlib.sha256(secret.encode()).hexdigest()


class AccessTokenQuerySet(models.QuerySet):
    def valid(self, now=None):
        """Tokens that are neither revoked nor expired, of active users."""
        now = now or timezone.now()
        return self.filter(
            Q(expires__isnull=True) | Q(expires__gt=now),
            revoked__isnull=True,
            user__is_active=True,
        )

    def revoke(self):
        """Revoke every token of the queryset not revoked yet; returns how many."""
        return self.filter(revoked__isnull=True).update(revoked=timezone.now())


class AccessTokenManager(models.Manager.from_queryset(AccessTokenQuerySet)):
    def issue(self, user, name, expires=None):
        """Create a token; returns it and its secret, which nothing else keeps."""
        token = self.model(user=user, name=name, expires=expires)
        secret = token.new_secret()
        token.save()
        return token, secret

    def for_secret(self, secret):
        """The token whose secret this is, with its user, or None."""
        if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
            return None
        return self.select_related("user").filter(digest=digest_of(secret)).first()


class AccessToken(models.Model):
    """A revocable credential for one programmatic client of one user."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="vanilla_tokens",
    )
    name = models.CharField(max_length=100, help_text="What or who uses it.")
    prefix = models.CharField(
        max_length=SHOWN_LENGTH,
        editable=False,
        help_text="The secret's first characters, to recognise it.",
    )
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created = models.DateTimeField(auto_now_add=True)
    expires = models.DateTimeField(
        null=True, blank=True, help_text="Empty: until revoked."
    )
    revoked = models.DateTimeField(null=True, blank=True, editable=False)
    last_used = models.DateTimeField(null=True, blank=True, editable=False)

    objects = AccessTokenManager()

    class Meta:
        ordering = ["-created"]
        verbose_name = "access token"

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    def new_secret(self):
        """Give the token a fresh secret; returns it (only its digest is kept)."""
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        self.digest = digest_of(secret)
        self.prefix = secret[:SHOWN_LENGTH]
        return secret

    def refusal(self, now=None):
        """Why the token may not be used now, or None if it may."""
        now = now or timezone.now()
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and self.expires <= now:
            return "expired"
        if not self.user.is_active:
            return "its user is inactive"
        return None

    def revoke(self):
        if self.revoked is None:
            self.revoked = timezone.now()
            self.save(update_fields=["revoked"])

    def touch(self, now=None):
        """Note a use, at most once per TOUCH_EVERY."""
        now = now or timezone.now()
        if self.last_used is None or now - self.last_used >= TOUCH_EVERY:
            AccessToken.objects.filter(pk=self.pk).update(last_used=now)
            self.last_used = now
