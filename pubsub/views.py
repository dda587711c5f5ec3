"""
The access-token API: a signed-in user issues tokens for their programmatic
clients, lists them and revokes them. Session authentication and CSRF apply
as to any Django form; a token never issues another token.
"""
import json
from datetime import timedelta
from functools import wraps

from django.http import JsonResponse
from django.shortcuts import get_object_or_404
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from .models import AccessToken

#: The longest lifetime a token issued through the API may ask for.
MAX_DAYS = 365


def _described(token):
    return {
        "id": token.pk,
        "name": token.name,
        "prefix": token.prefix,
        "created": token.created.isoformat(),
        "expires": token.expires.isoformat() if token.expires else None,
        "revoked": token.revoked.isoformat() if token.revoked else None,
        "last_used": token.last_used.isoformat() if token.last_used else None,
    }


def _refused(message, status=400):
    return JsonResponse({"error": message}, status=status)


def signed_in(view):
    """401 in JSON, not a redirect to a login page, for anonymous callers."""

    @wraps(view)
    def guarded(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return _refused("sign in first", status=401)
        return view(request, *args, **kwargs)

    return guarded


@signed_in
@require_http_methods(["GET", "POST"])
def tokens(request):
    """GET lists the user's tokens; POST ``{"name", "days"}`` issues one."""
    if request.method == "GET":
        mine = AccessToken.objects.filter(user=request.user)
        return JsonResponse({"tokens": [_described(token) for token in mine]})
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return _refused("the body must be a JSON object")
    if not isinstance(body, dict):
        return _refused("the body must be a JSON object")
    name, days = body.get("name"), body.get("days", 30)
    if not isinstance(name, str) or not 0 < len(name.strip()) <= 100:
        return _refused("name must be a text of 1 to 100 characters")
    if type(days) not in (int, float) or not 0 < days <= MAX_DAYS:
        return _refused(f"days must be a number above 0 and at most {MAX_DAYS}")
    expires = timezone.now() + timedelta(days=days)
    token, secret = AccessToken.objects.issue(request.user, name.strip(), expires)
    # The secret is shown this once; only its digest is kept.
    return JsonResponse({**_described(token), "token": secret}, status=201)


@signed_in
@require_http_methods(["DELETE"])
def token(request, pk):
    """DELETE revokes one of the user's tokens; its connections close."""
    found = get_object_or_404(AccessToken, pk=pk, user=request.user)
    found.revoke()
    return JsonResponse(_described(found))
