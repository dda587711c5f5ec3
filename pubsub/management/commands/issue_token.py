"""Issue an access token for a user and print its secret, once."""
import datetime
import logging

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from pubsub.models import AccessToken

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Issue an access token for USERNAME; prints the secret, which is kept "
        "nowhere. Revoke tokens in the admin."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", required=True, help="What or who uses it.")
        parser.add_argument(
            "--days", type=float, help="Expire after this many days (default never)."
        )

    def handle(self, *args, username, name, days, **options):
        try:
            user = get_user_model().objects.get_by_natural_key(username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"no user is named {username!r}") from None
        if days is not None and days <= 0:
            raise CommandError("--days must be positive")
        expires = timezone.now() + datetime.timedelta(days=days) if days else None
        token, secret = AccessToken.objects.issue(user, name, expires=expires)
        logger.info("issued access token #%s %r for %s", token.pk, name, username)
        self.stdout.write(secret)
