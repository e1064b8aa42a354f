//! Chat templates: a conversation rendered to the text a model was trained to read, by the
//! Jinja template the model ships (a GGUF file's `tokenizer.chat_template`, as Hugging Face's
//! `apply_chat_template` renders it), or ChatML for the models we train ourselves.

use minijinja::Environment;
use serde::{Deserialize, Serialize};

/// ChatML, the format SmolLM2 and many small models use; ours use it too.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Where a ChatML assistant turn ends: generation stops here.
pub const CHATML_END: &str = "<|im_end|>";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("chat template: {0}")]
pub struct ChatError(String);

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl ChatTemplate {
    pub fn new(source: &str) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| ChatError(e.to_string()))?;
        Ok(Self { env })
    }

    pub fn chatml() -> Self {
        // The constant is a valid template; a test renders it.
        Self::new(CHATML).unwrap_or_else(|_| Self {
            env: Environment::new(),
        })
    }

    /// The text of `messages`, ending with the start of an assistant turn when
    /// `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| ChatError(e.to_string()))?;
        template
            .render(minijinja::context! {
                messages => minijinja::Value::from(minijinja::value::Serde(messages)),
                add_generation_prompt,
            })
            .map_err(|e| ChatError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_turns_and_the_generation_prompt() {
        let t = ChatTemplate::chatml();
        let text = t
            .render(
                &[
                    Message::new("user", "Hi"),
                    Message::new("assistant", "Hello"),
                ],
                false,
            )
            .expect("render");
        assert_eq!(
            text,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
        );
        let prompt = t
            .render(&[Message::new("user", "Hi")], true)
            .expect("render");
        assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt}");
        assert!(ChatTemplate::new("{% for %}").is_err());
    }
}
