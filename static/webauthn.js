// Security keys and passkeys (WebAuthn Level 3), for Portcullis's own pages. No framework, no
// inline script: the page's form carries the options in data-options (JSON, its binary fields
// base64url, as the server's WebAuthn library writes them) and data-webauthn ("create" to
// register, "get" to prove the second step, "passkey" to sign in with a passkey alone). On
// submit this asks the browser, puts the answer in the form's hidden "credential" field (JSON,
// binary fields base64url) and submits the form, so the server still gets an ordinary form POST
// with its CSRF token and Origin check.
//
// On the login page ("passkey") the browser is also asked, where it supports it, to offer the
// site's passkeys in the user name field's autofill (conditional mediation, WebAuthn L3
// §5.1.4.1); the button aborts that request and asks directly, with the same challenge.
(function () {
  "use strict";
  var form = document.querySelector("form[data-webauthn]");
  if (!form) { return; }
  var status = form.querySelector("[data-webauthn-status]");
  var unsupported = document.getElementById("webauthn-unsupported");
  if (!window.PublicKeyCredential || !navigator.credentials) {
    // No WebAuthn here: offer the other ways instead of a button that cannot work.
    form.hidden = true;
    if (unsupported) { unsupported.hidden = false; }
    return;
  }

  function fromBase64url(text) {
    var base64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (base64.length % 4) { base64 += "="; }
    var bytes = atob(base64);
    var out = new Uint8Array(bytes.length);
    for (var i = 0; i < bytes.length; i++) { out[i] = bytes.charCodeAt(i); }
    return out.buffer;
  }

  function toBase64url(buffer) {
    var bytes = new Uint8Array(buffer);
    var text = "";
    for (var i = 0; i < bytes.length; i++) { text += String.fromCharCode(bytes[i]); }
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function decodeIds(list) {
    (list || []).forEach(function (c) { c.id = fromBase64url(c.id); });
  }

  // The button is hidden until now: without this script it could not do anything.
  var start = form.querySelector("[data-webauthn-start]");
  if (start) { start.hidden = false; }

  var mode = form.getAttribute("data-webauthn");
  var options = JSON.parse(form.getAttribute("data-options")).publicKey;
  options.challenge = fromBase64url(options.challenge);
  if (mode === "create") {
    options.user.id = fromBase64url(options.user.id);
    decodeIds(options.excludeCredentials);
  } else {
    decodeIds(options.allowCredentials);
  }

  function answer(credential) {
    form.elements.credential.value = JSON.stringify(encode(credential));
    form.submit();
  }

  var busy = false;
  // The autofill request, while it waits: the button cancels it before asking directly (a
  // browser runs one request at a time).
  var conditional = null;
  if (mode === "passkey" && PublicKeyCredential.isConditionalMediationAvailable) {
    PublicKeyCredential.isConditionalMediationAvailable().then(function (available) {
      if (!available || busy) { return; }
      var controller = new AbortController();
      var asked = navigator.credentials.get({ publicKey: options, mediation: "conditional", signal: controller.signal });
      conditional = { controller: controller, settled: asked.then(answer, function () {}) };
    }, function () {});
  }

  function encode(credential) {
    var r = credential.response;
    var out = {
      id: credential.id,
      rawId: toBase64url(credential.rawId),
      type: credential.type,
      extensions: credential.getClientExtensionResults ? credential.getClientExtensionResults() : {},
      response: { clientDataJSON: toBase64url(r.clientDataJSON) }
    };
    if (r.attestationObject) {
      out.response.attestationObject = toBase64url(r.attestationObject);
    } else {
      out.response.authenticatorData = toBase64url(r.authenticatorData);
      out.response.signature = toBase64url(r.signature);
      out.response.userHandle = r.userHandle ? toBase64url(r.userHandle) : null;
    }
    return out;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (busy) { return; }
    busy = true;
    if (status) { status.textContent = "Touch your security key, or confirm on your device…"; }
    var waited = Promise.resolve();
    if (conditional) {
      conditional.controller.abort();
      waited = conditional.settled;
      conditional = null;
    }
    var ask = waited.then(function () {
      return mode === "create"
        ? navigator.credentials.create({ publicKey: options })
        : navigator.credentials.get({ publicKey: options });
    });
    ask.then(answer, function () {
      busy = false;
      if (status) {
        status.textContent = "No key answered, or it was cancelled. Try again, or choose another way.";
      }
    });
  });
})();
