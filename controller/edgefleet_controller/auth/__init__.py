"""Who may call the controller: principals and roles (``principals``), and the auth service over the token
and trusted-key store (``service``): authentication, enrollment and operator tokens, trusted publisher keys."""
