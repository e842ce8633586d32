// The cleanup page: run the cleanup, show its result, then reload the plan.
"use strict";

(function () {
  const form = document.getElementById("cleanup-form");
  const resultBox = document.getElementById("cleanup-result");
  if (!form) {
    return;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button");
    button.disabled = true;
    resultBox.hidden = false;
    resultBox.textContent = "Cleaning up…";
    try {
      const response = await fetch(form.action, {method: "POST", headers: {Accept: "application/json"}});
      const body = await response.json();
      resultBox.textContent = response.ok ? body.message : `Cleanup failed: ${body.detail || body.error}`;
      if (response.ok) {
        window.setTimeout(() => window.location.reload(), 1500);
      }
    } catch (error) {
      resultBox.textContent = `The cleanup request failed: ${error}`;
    }
    button.disabled = false;
  });
})();
