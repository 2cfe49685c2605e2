// Render the math that pymdownx.arithmatex (generic mode) leaves in the page as \( … \) inside
// span.arithmatex and \[ … \] inside div.arithmatex, with the KaTeX copy served by this site.
// `document$` is Material's page-load stream (it also fires after instant navigation).
function renderArithmatex(root) {
  root.querySelectorAll(".arithmatex").forEach(function (element) {
    renderMathInElement(element, {
      delimiters: [
        { left: "\\(", right: "\\)", display: false },
        { left: "\\[", right: "\\]", display: true },
      ],
      throwOnError: false,
    });
  });
}

if (typeof document$ !== "undefined") {
  document$.subscribe(function () { renderArithmatex(document); });
} else {
  document.addEventListener("DOMContentLoaded", function () { renderArithmatex(document); });
}
