// Placeholder: the browser worker lands here (join page).
document.body.textContent = 'loramesh join page';
