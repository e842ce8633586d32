// The confirm-cancel page: send the cancel request, then go back to the build page.
"use strict";

(function () {
  const form = document.getElementById("cancel-form");
  if (!form) {
    return;
  }
  const errorBox = document.getElementById("cancel-error");

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = document.getElementById("confirm-cancel");
    button.disabled = true;
    errorBox.hidden = true;
    try {
      const response = await fetch(form.action, {method: "POST", headers: {Accept: "application/json"}});
      if (response.ok) {
        window.location.assign(`/build/${encodeURIComponent(form.dataset.buildId)}`);
        return;
      }
      let detail = `HTTP ${response.status}`;
      try {
        const body = await response.json();
        detail = body.detail || body.error || detail;
      } catch (ignored) {
        // The body was not JSON; the status code is all there is to show.
      }
      errorBox.textContent = `The build was not cancelled: ${detail}`;
    } catch (error) {
      errorBox.textContent = `The cancel request failed: ${error}`;
    }
    errorBox.hidden = false;
    button.disabled = false;
  });
})();
